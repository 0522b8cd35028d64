//! The steps of the hit and miss paths, one by one, through the `internals` feature's wrappers
//! (`tower_redis_cache::bench_internals`), for the same request and body as `benches/paths.rs`.
//!
//! ```sh
//! cargo bench --features internals --bench internals
//! ```
//!
//! A hit is `decide` (which includes `key`), `lookup`, then `answer` (which includes `decode`
//! and, for a client without `zstd`, `decompress`). A miss adds `tee` on the way to the client,
//! then `compress` and `encode` in the background before the store write.

mod support;

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tower_redis_cache::bench_internals::{entry_key, Harness, StoredEntry};
use tower_redis_cache::Rule;

fn request(accepts_zstd: bool) -> http::request::Parts {
    let mut request = Request::get("/users").header(HOST, "api.example.com");
    if accepts_zstd {
        request = request.header("accept-encoding", "zstd");
    }
    request.body(()).expect("a valid request").into_parts().0
}

fn response(body: &Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.clone()));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn internals(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let body = support::json_body();
    let harness = Harness::new("/users", Rule::get());
    let parts = request(false);
    let planned = harness.decide(&parts).expect("GET /users is looked up");
    let planned_zstd = harness.decide(&request(true)).expect("GET /users is looked up");

    // Fill the entry as a miss does (inside the runtime, the tee's entry is written in the
    // background), then read back the bytes the store holds.
    let (versions, found) = rt.block_on(async {
        let versions = harness.versions(&planned).await.expect("tag versions");
        let sent = harness.tee(&planned, versions.clone(), response(&body));
        assert_eq!(sent, Some(body.len()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let found = harness.lookup(&planned).await.expect("the store answers");
        (versions, found)
    });
    let stored = found.entry.clone().expect("the entry was stored");
    assert!(harness.answer::<Full<Bytes>>(&planned, found.clone()).is_some(), "not a hit");
    let entry = StoredEntry::decode(stored.clone()).expect("the stored entry decodes");
    assert!(entry.is_compressed(), "a 2 KB body is stored compressed");
    let plain = entry.clone().for_client(false).expect("it decompresses");
    assert_eq!(plain.body_len(), body.len());
    eprintln!(
        "entry: {} bytes stored, body {} bytes compressed from {}; key {}",
        stored.len(),
        entry.body_len(),
        body.len(),
        planned.key()
    );

    let mut group = c.benchmark_group("internals");
    group.bench_function("decide", |b| b.iter(|| harness.decide(black_box(&parts))));
    group.bench_function("key", |b| b.iter(|| entry_key(black_box(&parts), "trc", planned.vary())));
    group.bench_function("lookup", |b| b.to_async(&rt).iter(|| harness.lookup(&planned)));
    group.bench_function("answer", |b| {
        b.iter_batched(
            || found.clone(),
            |found| harness.answer::<Full<Bytes>>(&planned, found),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("answer_accepts_zstd", |b| {
        b.iter_batched(
            || found.clone(),
            |found| harness.answer::<Full<Bytes>>(&planned_zstd, found),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("decode", |b| b.iter(|| StoredEntry::decode(black_box(stored.clone()))));
    group.bench_function("decompress", |b| {
        b.iter_batched(|| entry.clone(), |entry| entry.for_client(false), BatchSize::SmallInput)
    });
    // Outside the runtime: the finished entry is dropped, not written.
    group.bench_function("tee", |b| {
        b.iter_batched(
            || (versions.clone(), response(&body)),
            |(versions, response)| harness.tee(&planned, versions, response),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("compress", |b| {
        b.iter_batched(|| plain.clone(), |entry| entry.compressed(1024), BatchSize::SmallInput)
    });
    group.bench_function("encode", |b| b.iter(|| entry.encode()));
    group.finish();
}

criterion_group!(benches, internals);
criterion_main!(benches);
