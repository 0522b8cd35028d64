//! The in-process store.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::sync::Cache;
use moka::Expiry;

use super::{fresh_version, Lookup, Store, StoreError, TagVersion};

/// Default bound on the bytes held by a [`MemoryStore`]: 64 MiB.
const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// How many tag versions a [`MemoryStore`] keeps. Losing one is safe (the tag then matches no
/// entry), so this only bounds memory under many templated tags such as `user:{id}`.
const MAX_TAG_VERSIONS: u64 = 1_000_000;

/// An in-process store bounded by bytes, built on `moka`.
///
/// Use it when there is no Redis (development, a single instance) or as a fast private cache.
/// Entries are weighed by key and body size; when the bound is reached the least useful entries
/// are dropped (moka's TinyLFU policy). Clones share the same storage.
///
/// ```
/// use tower_redis_cache::MemoryStore;
/// let store = MemoryStore::new(32 * 1024 * 1024); // at most 32 MiB of entries
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    entries: Cache<String, StoredValue>,
    versions: Cache<String, TagVersion>,
    leases: Cache<String, Duration>,
}

#[derive(Clone)]
struct StoredValue {
    bytes: Bytes,
    ttl: Duration,
}

/// How many leases a [`MemoryStore`] holds at once; they last seconds at most.
const MAX_LEASES: u64 = 100_000;

/// Gives each lease its own time to live.
struct LeaseTtl;

impl Expiry<String, Duration> for LeaseTtl {
    fn expire_after_create(&self, _: &String, ttl: &Duration, _: Instant) -> Option<Duration> {
        Some(*ttl)
    }
}

/// Gives each entry its own time to live.
struct PerEntryTtl;

impl Expiry<String, StoredValue> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, value: &StoredValue, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &StoredValue,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl MemoryStore {
    /// A store that holds at most `max_bytes` of keys and entries.
    pub fn new(max_bytes: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, value: &StoredValue| {
                u32::try_from(key.len() + value.bytes.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        let versions = Cache::builder().max_capacity(MAX_TAG_VERSIONS).build();
        let leases = Cache::builder().max_capacity(MAX_LEASES).expire_after(LeaseTtl).build();
        Self { entries, versions, leases }
    }

    /// The bytes of keys and entries held now, once pending evictions have run. Never more
    /// than the bound given to [`new`](Self::new), give or take one entry being inserted.
    pub fn used_bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

impl Default for MemoryStore {
    /// A store bounded to 64 MiB.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BYTES)
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.entry_count())
            .field("weighted_size", &self.entries.weighted_size())
            .finish()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn lookup(&self, key: &str, tags: &[String]) -> Result<Lookup, StoreError> {
        Ok(Lookup {
            entry: self.entries.get(key).map(|value| value.bytes),
            versions: tags.iter().map(|tag| self.versions.get(tag)).collect(),
        })
    }

    async fn ensure_tag_versions(&self, tags: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        Ok(tags.iter().map(|tag| self.versions.get_with_by_ref(tag, fresh_version)).collect())
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.entries.insert(key.to_owned(), StoredValue { bytes: value, ttl });
        Ok(())
    }

    async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError> {
        for tag in tags {
            self.versions.insert(tag.clone(), fresh_version());
        }
        Ok(())
    }

    async fn acquire_lease(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        Ok(self.leases.entry_by_ref(key).or_insert_with(|| ttl).is_fresh())
    }

    async fn release_lease(&self, key: &str) -> Result<(), StoreError> {
        self.leases.invalidate(key);
        Ok(())
    }
}
