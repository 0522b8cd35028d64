//! The service suite (`tests/suite/service.rs`) over Redis: each test gets a private
//! `redis-server` on a free loopback port, stopped when the test's layer is dropped.
#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;

use support::redis::RedisServer;
use tower_redis_cache::RedisStore;

/// A store on a server of its own, which lives as long as the store.
struct ServerStore {
    store: RedisStore,
    _server: RedisServer,
}

#[async_trait]
impl Store for ServerStore {
    async fn lookup(&self, key: &str, tags: &[String]) -> Result<Lookup, StoreError> {
        self.store.lookup(key, tags).await
    }
    async fn ensure_tag_versions(&self, tags: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        self.store.ensure_tag_versions(tags).await
    }
    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.store.put(key, value, ttl).await
    }
    async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError> {
        self.store.evict_tags(tags).await
    }
    async fn acquire_lease(
        &self,
        key: &str,
        holder: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.store.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: u64) -> Result<(), StoreError> {
        self.store.release_lease(key, holder).await
    }
    async fn add_to_index(&self, index: &str, key: &str, ttl: Duration) -> Result<(), StoreError> {
        self.store.add_to_index(index, key, ttl).await
    }
    async fn index_members(&self, index: &str) -> Result<Vec<String>, StoreError> {
        self.store.index_members(index).await
    }
    async fn acquire_lease_then_lookup(
        &self,
        lease: &str,
        holder: u64,
        ttl: Duration,
        key: &str,
        tags: &[String],
    ) -> Result<(bool, Lookup), StoreError> {
        self.store.acquire_lease_then_lookup(lease, holder, ttl, key, tags).await
    }
}

/// A fresh, empty store for one test.
async fn test_store() -> Arc<dyn Store> {
    let server = RedisServer::start();
    let store =
        RedisStore::from_url(server.url()).await.expect("connect to the test's redis-server");
    Arc::new(ServerStore { store, _server: server })
}

include!("suite/service.rs");

/// The gRPC calls of `tests/suite/grpc.rs`, over the same store.
mod grpc {
    use super::*;

    include!("suite/grpc.rs");
}
