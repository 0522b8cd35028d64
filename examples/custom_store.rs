//! A `Store` of your own: entries and tag versions in a `HashMap` behind a mutex, checked by the
//! crate's conformance suite (`store::conformance`, the `test-util` feature).
//!
//! ```text
//! cargo run --example custom_store
//! ```
//!
//! It prints `HashMapStore conforms` when every check passes, and panics naming the first one
//! that fails. A real store would talk to a database or another cache server; what it must
//! guarantee is the same:
//!
//! - an entry comes back byte for byte until its TTL is up;
//! - every tag has at most one version, which `ensure_tag_versions` makes once (concurrent
//!   first uses agree on it) and `evict_tags` replaces with one never used before;
//! - a lease has one holder at a time (a store that leaves the default, which grants every
//!   lease, passes `check_store` but not `check_leases`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tower_redis_cache::store::{conformance, Lookup, TagVersion};
use tower_redis_cache::{Store, StoreError};

/// Entries and tag versions, each with the instant it expires.
#[derive(Default)]
struct HashMapStore {
    entries: Mutex<HashMap<String, (Bytes, Instant)>>,
    versions: Mutex<HashMap<String, TagVersion>>,
    /// Each lease's holder, and until when it holds it.
    leases: Mutex<HashMap<String, (u64, Instant)>>,
    /// Versions are never reused: an evicted tag's old entries must never match again.
    next_version: AtomicU64,
}

impl HashMapStore {
    fn new_version(&self) -> TagVersion {
        self.next_version.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[async_trait]
impl Store for HashMapStore {
    async fn lookup(&self, key: &str, tags: &[String]) -> Result<Lookup, StoreError> {
        let now = Instant::now();
        let entry = self
            .entries
            .lock()
            .unwrap()
            .get(key)
            .and_then(|(value, expires)| (*expires > now).then(|| value.clone()));
        let known = self.versions.lock().unwrap();
        let versions = tags.iter().map(|tag| known.get(tag).copied()).collect();
        Ok(Lookup { entry, versions })
    }

    async fn ensure_tag_versions(&self, tags: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        // One lock for all of them: two first uses of a tag agree on its version.
        let mut known = self.versions.lock().unwrap();
        Ok(tags
            .iter()
            .map(|tag| *known.entry(tag.clone()).or_insert_with(|| self.new_version()))
            .collect())
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let expires = Instant::now() + ttl;
        self.entries.lock().unwrap().insert(key.to_owned(), (value, expires));
        Ok(())
    }

    async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError> {
        let mut known = self.versions.lock().unwrap();
        for tag in tags {
            known.insert(tag.clone(), self.new_version());
        }
        Ok(())
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap();
        match leases.get(key) {
            Some((_, until)) if *until > now => Ok(false),
            _ => {
                leases.insert(key.to_owned(), (holder, now + ttl));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, key: &str, holder: u64) -> Result<(), StoreError> {
        let mut leases = self.leases.lock().unwrap();
        if leases.get(key).is_some_and(|(held_by, _)| *held_by == holder) {
            leases.remove(key);
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    conformance::check_leases(&HashMapStore::default()).await;
    conformance::check_store(Arc::new(HashMapStore::default())).await;
    println!("HashMapStore conforms");
}
