//! One conformance suite for every `Store` (the public `store::conformance`, enabled here by
//! the `test-util` feature): the in-process store and Redis (a private `redis-server` the
//! harness starts) must behave the same.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
#[cfg(feature = "redis")]
use support::cluster::RedisCluster;
#[cfg(feature = "redis")]
use support::redis::RedisServer;
use tower_redis_cache::store::conformance;
use tower_redis_cache::{MemoryStore, Store};
#[cfg(feature = "redis")]
use tower_redis_cache::{RedisStore, TieredStore};

#[cfg(feature = "redis")]
fn tags(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("test:v1:t:{n}")).collect()
}

async fn conformance(store: Arc<dyn Store>) {
    conformance::check_leases(&*store).await;
    conformance::check_store(store).await;
}
#[tokio::test]
async fn memory_store_conforms() {
    conformance(Arc::new(MemoryStore::default())).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_store_conforms() {
    let server = RedisServer::start();
    let store = RedisStore::from_url(server.url()).await.unwrap();
    conformance(Arc::new(store)).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_store_with_one_connection_conforms() {
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url()).pool_size(1).build().await.unwrap();
    conformance(Arc::new(store)).await;
}

// `redis+unix://`: the store talks to the server through its Unix socket (the harness pings
// its TCP port).
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_store_over_a_unix_socket_conforms() {
    let dir = std::env::temp_dir().join(format!("trc-socket-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("redis.sock");
    let socket = socket.to_str().unwrap();
    let server = RedisServer::start_with(&["--unixsocket", socket, "--unixsocketperm", "700"]);
    let store = RedisStore::from_url(format!("redis+unix://{socket}")).await.unwrap();
    store
        .put("test:over-the-socket", Bytes::from_static(b"yes"), Duration::from_secs(60))
        .await
        .unwrap();
    conformance(Arc::new(store)).await;
    // What the store wrote went through the socket to this very server.
    assert!(server.keys().contains("test:over-the-socket"), "{}", server.keys());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn tiered_store_conforms() {
    let server = RedisServer::start();
    let store = TieredStore::builder(server.url()).build().await.unwrap();
    conformance(Arc::new(store)).await;
}

#[cfg(feature = "redis")]
/// No command names two keys, so entries and tag versions may live on any node.
#[tokio::test]
async fn redis_store_on_a_cluster_conforms() {
    let cluster = RedisCluster::start();
    let store = RedisStore::from_url(cluster.url()).await.unwrap();
    conformance(Arc::new(store)).await;
    let spread = cluster.keys_per_node();
    assert!(spread.iter().filter(|&&n| n > 0).count() >= 2, "keys on one node only: {spread:?}");
    let tiered = TieredStore::builder(cluster.url()).channel("test:changed").build().await.unwrap();
    conformance(Arc::new(tiered)).await;
}

#[tokio::test]
async fn memory_store_stays_within_its_byte_bound() {
    let store = MemoryStore::new(64 * 1024);
    let value = Bytes::from(vec![7u8; 1024]);
    for i in 0..1_000 {
        store.put(&format!("test:v1:e:{i}"), value.clone(), Duration::from_secs(60)).await.unwrap();
        // Path indexes count against the bound too.
        let (index, key) = (format!("test:v1:i:{}", i % 300), format!("test:v1:e:{i}"));
        store.add_to_index(&index, &key, Duration::from_secs(60)).await.unwrap();
    }
    let used = store.used_bytes();
    assert!(used <= 64 * 1024, "holds {used} bytes");
    // A store this small gives half its bound to tag versions.
    assert!(used > 24 * 1024, "should still hold a good share of the bound, holds {used}");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_tag_versions_overwritten_by_something_else_are_replaced() {
    let server = RedisServer::start();
    let store = RedisStore::from_url(server.url()).await.unwrap();
    let t = tags(&["corrupt"]);
    server.command(&["SET", &t[0], "not a number"]).unwrap();
    assert_eq!(store.lookup("test:v1:e:any", &t).await.unwrap().versions, vec![None]);
    let version = store.ensure_tag_versions(&t).await.unwrap()[0];
    assert_eq!(store.lookup("test:v1:e:any", &t).await.unwrap().versions, vec![Some(version)]);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_tag_versions_expire_so_templated_tags_do_not_pile_up() {
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .tag_version_ttl(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let ttl = || {
        let ttl = server.command(&["TTL", "test:v1:t:user:1"]).unwrap();
        ttl.trim_start_matches(':').trim().parse::<i64>().unwrap()
    };
    // Made for a miss: provisional until an entry carrying it is stored.
    let made = store.ensure_tag_versions(&tags(&["user:1"])).await.unwrap();
    assert!((1..=60).contains(&ttl()), "a provisional version lasts a minute: {}", ttl());
    store.keep_tag_versions(&tags(&["user:1"])).await.unwrap();
    assert!((3500..=3600).contains(&ttl()), "a kept version lasts the store's lifetime");
    assert_eq!(store.ensure_tag_versions(&tags(&["user:1"])).await.unwrap(), made);
    store.evict_tags(&tags(&["user:1"])).await.unwrap();
    assert!((3500..=3600).contains(&ttl()), "an eviction's version too");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_store_reports_unreachable_servers_and_bad_urls() {
    let port = support::redis::free_port();
    let started = std::time::Instant::now();
    let err = RedisStore::builder(format!("redis://127.0.0.1:{port}"))
        .connection_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let err = RedisStore::from_url("redis://127.0.0.1:not-a-port").await.unwrap_err();
    assert!(err.to_string().contains("invalid Redis URL"), "{err}");
    for (replicas, timeout) in [(0, Duration::from_millis(100)), (1, Duration::ZERO)] {
        let err = RedisStore::builder(format!("redis://127.0.0.1:{port}"))
            .wait_for_replicas(replicas, timeout)
            .build()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("wait_for_replicas"), "{err}");
    }
}

// Stores whose evictions wait for a replica (`wait_for_replicas`) conform, and an eviction the
// replica cannot acknowledge (it is frozen) fails instead of passing for done.
#[cfg(feature = "redis")]
#[tokio::test]
async fn stores_whose_evictions_wait_for_a_replica_conform() {
    let primary = RedisServer::start();
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !replica.command(&["INFO", "replication"]).unwrap().contains("master_link_status:up") {
        assert!(std::time::Instant::now() < deadline, "the replica did not sync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = Duration::from_millis(300);
    let redis = RedisStore::builder(primary.url()).wait_for_replicas(1, waiting).build().await;
    let redis = redis.unwrap();
    conformance(Arc::new(redis.clone())).await;
    let tiered = TieredStore::builder(primary.url())
        .redis(|redis| redis.wait_for_replicas(1, waiting))
        .build()
        .await
        .unwrap();
    conformance(Arc::new(tiered)).await;

    replica.pause();
    let err = redis.evict_tags(&tags(&["frozen"])).await.unwrap_err();
    replica.resume();
    assert!(err.to_string().contains("acknowledged by 0 of 1"), "{err}");
}
