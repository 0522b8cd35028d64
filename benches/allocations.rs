//! Heap allocations per request on the hit, miss and bypass paths, against the bare inner
//! service, counted by `dhat`'s global allocator.
//!
//! ```sh
//! cargo bench --bench allocations
//! ```
//!
//! The same layer and inner service as `benches/paths.rs` (a 2 KB JSON body, `MemoryStore`),
//! on one current-thread Tokio runtime. Each path runs `REQUESTS` times after a warm-up, and the
//! table gives the allocations (blocks) and bytes per request, and the same less the bare inner
//! service's (which counts the request, its response and the collected body, made outside the
//! layer). A miss yields to the runtime after each request, so that its background write is
//! counted too.
//!
//! Counting, not timing: `dhat` records a backtrace per allocation, so this binary is slow,
//! and its times mean nothing.

#[path = "support/service.rs"]
mod service;
mod support;

use service::{inner, request};

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tower::{Layer, Service, ServiceExt};
use tower_redis_cache::{CacheLayer, MemoryStore, Rule};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Requests per path.
const REQUESTS: u64 = 1_000;

/// One request through `service`, its body collected; returns its `X-Cache`.
async fn send<S, B>(service: &mut S, request: Request<Empty<Bytes>>) -> Option<String>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    let x_cache = response.headers().get("x-cache").map(|v| v.to_str().unwrap().to_owned());
    response.into_body().collect().await.expect("a complete body");
    x_cache
}

/// Allocations and bytes per request of `REQUESTS` requests made by `make`, each expected to
/// answer `expected` in `X-Cache` (`None`: no header, the bare service).
async fn count<S, B>(
    mut service: S,
    make: impl Fn(u64) -> Request<Empty<Bytes>>,
    expected: Option<&str>,
    yield_each: bool,
) -> (f64, f64)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    // Warm: the first requests fill lazily made state (metrics handles, thread-local zstd
    // contexts, the entry itself).
    for i in 0..10 {
        send(&mut service, make(REQUESTS + i)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = dhat::HeapStats::get();
    for i in 0..REQUESTS {
        let x_cache = send(&mut service, make(i)).await;
        assert_eq!(x_cache.as_deref(), expected, "request {i}");
        if yield_each {
            tokio::task::yield_now().await;
        }
    }
    let after = dhat::HeapStats::get();
    let per = |total: u64| total as f64 / REQUESTS as f64;
    (per(after.total_blocks - before.total_blocks), per(after.total_bytes - before.total_bytes))
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let body = support::json_body();
    let layer = |compress: bool| {
        let builder = CacheLayer::builder(MemoryStore::default()).route("/users", Rule::get());
        let builder = if compress { builder } else { builder.without_compression() };
        builder.build().expect("a valid layer")
    };
    let (compressed, uncompressed) = (layer(true), layer(false));
    let cached = || compressed.layer(inner(body.clone()));

    let rows = runtime.block_on(async {
        let users = |zstd| move |_| request("/users", zstd);
        let misses = |i| request(&format!("/users?n={i}"), false);
        vec![
            ("bare", count(inner(body.clone()), users(false), None, false).await),
            ("hit", count(cached(), users(false), Some("HIT"), false).await),
            ("hit_accepts_zstd", count(cached(), users(true), Some("HIT"), false).await),
            (
                "hit_uncompressed",
                count(uncompressed.layer(inner(body.clone())), users(false), Some("HIT"), false)
                    .await,
            ),
            ("miss", count(cached(), misses, Some("MISS"), true).await),
            ("bypass", count(cached(), |_| request("/health", false), Some("BYPASS"), false).await),
        ]
    });

    let (bare_blocks, bare_bytes) = rows[0].1;
    println!("| path | allocations / request | bytes / request | allocations less bare | bytes less bare |");
    println!("|---|--:|--:|--:|--:|");
    for (name, (blocks, bytes)) in rows {
        println!(
            "| {name} | {blocks:.1} | {bytes:.0} | {:.1} | {:.0} |",
            blocks - bare_blocks,
            bytes - bare_bytes
        );
    }
}
