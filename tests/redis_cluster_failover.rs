//! A local Redis Cluster of three masters with a replica each, under 32 concurrent clients
//! reading and writing, with a master killed in the middle: every request is answered, no read
//! returns less than the last write acknowledged before it began (evictions wait for the
//! replica, `wait_for_replicas`), and hits come back once the replica has taken over.
#![cfg(feature = "redis")]

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use support::cluster::RedisCluster;
use tower::ServiceExt;
use tower_redis_cache::{CacheLayer, RedisStore, Rule};

const CLIENTS: usize = 32;
const ITEMS: usize = 200;
const KILL_AFTER: Duration = Duration::from_secs(2);
const RUN_FOR: Duration = Duration::from_secs(16);

/// Each item's version in the origin, and the version each write was acknowledged at.
struct Items {
    version: Vec<AtomicU32>,
    acknowledged: Vec<AtomicU32>,
}

async fn read(State(items): State<Arc<Items>>, Path(id): Path<usize>) -> String {
    items.version[id].load(Ordering::SeqCst).to_string()
}

async fn write(State(items): State<Arc<Items>>, Path(id): Path<usize>) -> String {
    (items.version[id].fetch_add(1, Ordering::SeqCst) + 1).to_string()
}

#[derive(Default)]
struct Tally {
    reads: usize,
    hits_per_second: Vec<(usize, usize)>,
    failed: usize,
    stale: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_loses_no_request_and_no_write() {
    let mut cluster = RedisCluster::start_with(1, 1_000);
    let store = RedisStore::builder(cluster.url())
        .wait_for_replicas(1, Duration::from_millis(200))
        .build()
        .await
        .expect("connect to the cluster");
    let layer = CacheLayer::builder(store)
        .store_timeout(Duration::from_secs(1))
        .route("/items/{id}", Rule::get().ttl(Duration::from_secs(300)).tag("item:{id}"))
        .route("/items/{id}", Rule::put().evicts(["item:{id}"]))
        .build()
        .unwrap();
    let items = Arc::new(Items {
        version: (0..ITEMS).map(|_| AtomicU32::new(0)).collect(),
        acknowledged: (0..ITEMS).map(|_| AtomicU32::new(0)).collect(),
    });
    let app = Router::new()
        .route("/items/{id}", get(read).put(write))
        .with_state(Arc::clone(&items))
        .layer(layer);

    let started = Instant::now();
    let seconds = RUN_FOR.as_secs() as usize + 1;
    let tally =
        Arc::new(Mutex::new(Tally { hits_per_second: vec![(0, 0); seconds], ..Tally::default() }));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (app, items, tally) = (app.clone(), Arc::clone(&items), Arc::clone(&tally));
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(client as u64);
                while started.elapsed() < RUN_FOR {
                    let id = rng.usize(..ITEMS);
                    let writing = rng.u8(..20) == 0;
                    let method = if writing { Method::PUT } else { Method::GET };
                    let floor = items.acknowledged[id].load(Ordering::SeqCst);
                    let request = Request::builder()
                        .method(method)
                        .uri(format!("/items/{id}"))
                        .body(Body::empty())
                        .unwrap();
                    let response = app.clone().oneshot(request).await.unwrap();
                    let ok = response.status() == StatusCode::OK;
                    let hit = response.headers().get("x-cache").is_some_and(|v| v == "HIT");
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    let version: Option<u32> =
                        std::str::from_utf8(&body).ok().and_then(|b| b.parse().ok());
                    {
                        let mut tally = tally.lock().unwrap();
                        match (ok, version) {
                            (true, Some(version)) if writing => {
                                items.acknowledged[id].fetch_max(version, Ordering::SeqCst);
                            }
                            (true, Some(version)) => {
                                tally.reads += 1;
                                tally.stale += usize::from(version < floor);
                                let second =
                                    (started.elapsed().as_secs() as usize).min(seconds - 1);
                                tally.hits_per_second[second].0 += 1;
                                tally.hits_per_second[second].1 += usize::from(hit);
                            }
                            _ => tally.failed += 1,
                        }
                    }
                    // A client over a socket waits for I/O between requests (see
                    // tests/redis_sentinel.rs): without it the store's reconnection starves.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();

    tokio::time::sleep(KILL_AFTER).await;
    let killed = cluster.kill_a_master();
    for client in clients {
        client.await.unwrap();
    }

    let tally = tally.lock().unwrap();
    let ratios: Vec<String> = tally
        .hits_per_second
        .iter()
        .map(|(n, hits)| format!("{:.2}", *hits as f64 / (*n).max(1) as f64))
        .collect();
    println!(
        "{} reads, {} failed, {} stale; node {killed} (a master) killed at {KILL_AFTER:?}; hit \
         ratio per second: {}",
        tally.reads,
        tally.failed,
        tally.stale,
        ratios.join(" ")
    );
    assert!(cluster.wait_until_ok(Duration::from_secs(10)), "the replica took over");
    assert_eq!(tally.failed, 0, "every request answered");
    assert_eq!(tally.stale, 0, "no read older than a write acknowledged before it");
    let last: Vec<f64> = tally.hits_per_second[seconds - 4..seconds - 1]
        .iter()
        .map(|(n, hits)| *hits as f64 / (*n).max(1) as f64)
        .collect();
    assert!(last.iter().all(|ratio| *ratio >= 0.5), "hits came back: {last:?}");
}
