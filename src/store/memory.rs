//! The in-process store.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::sync::Cache;
use moka::Expiry;

use moka::ops::compute::Op;

use super::{fresh_version, Lookup, Store, StoreError, TagVersion, PROVISIONAL_TAG_VERSION_TTL};

/// Default bound on the bytes held by a [`MemoryStore`]: 64 MiB.
const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// What one tag version is counted as besides its key: the version, and the bookkeeping of the
/// map that holds it (about 300 bytes were measured per version, key included).
const VERSION_WEIGHT: usize = 8 + 256;

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
    versions: Cache<String, StoredVersion>,
    leases: Cache<String, Lease>,
    indexes: Cache<String, Arc<Mutex<IndexMembers>>>,
}

/// The keys of one URL's entries, for inspection: the latest [`MAX_INDEX_MEMBERS`], each once.
type IndexMembers = indexmap::IndexSet<String>;

/// How many keys an index keeps (the oldest go first), what one is counted as against the
/// store's bound (that many keys, each with its share of the set), and how long one lasts
/// after its last entry was stored: inspection is a diagnosis, not a promise to list every
/// per-user entry of a busy URL.
const MAX_INDEX_MEMBERS: usize = 32;
const INDEX_WEIGHT: usize = MAX_INDEX_MEMBERS * 128;
const INDEX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The share of a store's bound its path indexes may take: a sixty-fourth, at least 4 KiB and
/// at most an eighth (1 MiB, some 250 paths, in the default 64 MiB).
fn indexes_share(max_bytes: u64) -> u64 {
    (max_bytes / 64).max(4 * 1024).min(max_bytes / 8)
}

/// A tag version, and whether it is provisional: made for a miss, and kept only once an entry
/// carrying it is stored (see [`Store::ensure_tag_versions`]).
#[derive(Clone, Copy)]
struct StoredVersion {
    version: TagVersion,
    provisional: bool,
}

/// Provisional versions expire; kept ones and evictions' do not.
struct VersionTtl;

impl Expiry<String, StoredVersion> for VersionTtl {
    fn expire_after_create(
        &self,
        _: &String,
        value: &StoredVersion,
        _: Instant,
    ) -> Option<Duration> {
        value.provisional.then_some(PROVISIONAL_TAG_VERSION_TTL)
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &StoredVersion,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        value.provisional.then_some(PROVISIONAL_TAG_VERSION_TTL)
    }
}

/// The share of a store's bound its tag versions may take: a sixteenth, at least 64 KiB (some
/// 200 versions) and at most half. Losing a version is safe (the tag then matches no entry,
/// which costs a miss); the bound keeps junk requests and templated tags such as `user:{id}`
/// from growing memory without end.
fn versions_share(max_bytes: u64) -> u64 {
    (max_bytes / 16).max(64 * 1024).min(max_bytes / 2)
}

#[derive(Clone)]
struct StoredValue {
    bytes: Bytes,
    ttl: Duration,
}

/// How many leases a [`MemoryStore`] holds at once; they last seconds at most.
const MAX_LEASES: u64 = 100_000;

/// Who holds a lease, and for how long.
#[derive(Clone, Copy)]
struct Lease {
    holder: u64,
    ttl: Duration,
}

/// Gives each lease its own time to live.
struct LeaseTtl;

impl Expiry<String, Lease> for LeaseTtl {
    fn expire_after_create(&self, _: &String, lease: &Lease, _: Instant) -> Option<Duration> {
        Some(lease.ttl)
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
    /// A store that holds at most `max_bytes` of keys, entries, tag versions and path indexes
    /// (the versions take at most a sixteenth of it, the indexes a sixty-fourth).
    pub fn new(max_bytes: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_bytes - versions_share(max_bytes) - indexes_share(max_bytes))
            .weigher(|key: &String, value: &StoredValue| {
                u32::try_from(key.len() + value.bytes.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        let versions = Cache::builder()
            .max_capacity(versions_share(max_bytes))
            .weigher(|tag: &String, _: &StoredVersion| {
                u32::try_from(tag.len() + VERSION_WEIGHT).unwrap_or(u32::MAX)
            })
            .expire_after(VersionTtl)
            .build();
        let leases = Cache::builder().max_capacity(MAX_LEASES).expire_after(LeaseTtl).build();
        let indexes = Cache::builder()
            .max_capacity(indexes_share(max_bytes))
            .weigher(|path: &String, _: &Arc<Mutex<IndexMembers>>| {
                u32::try_from(path.len() + INDEX_WEIGHT).unwrap_or(u32::MAX)
            })
            .time_to_idle(INDEX_TTL)
            .build();
        Self { entries, versions, leases, indexes }
    }

    /// The bytes of keys, entries, tag versions and path indexes held now, once pending
    /// evictions have run. Never more than the bound given to [`new`](Self::new), give or take
    /// one entry being inserted.
    pub fn used_bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.indexes.run_pending_tasks();
        self.entries.weighted_size() + self.tag_version_bytes() + self.indexes.weighted_size()
    }

    /// The bytes counted for tag versions now (each its key and a fixed share for the version
    /// and its bookkeeping), once pending evictions have run: at most a sixteenth of the bound
    /// (64 KiB at least, half at most).
    pub fn tag_version_bytes(&self) -> u64 {
        self.versions.run_pending_tasks();
        self.versions.weighted_size()
    }

    /// The entry under `key` and the versions of `tags`, as they are now.
    fn read(&self, key: &str, tags: &[String]) -> Lookup {
        Lookup {
            entry: self.entries.get(key).map(|value| value.bytes),
            versions: tags.iter().map(|tag| self.versions.get(tag).map(|v| v.version)).collect(),
        }
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
        Ok(self.read(key, tags))
    }

    fn lookup_in_process(&self, key: &str, tags: &[String]) -> Option<Lookup> {
        Some(self.read(key, tags))
    }

    async fn ensure_tag_versions(&self, tags: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        let provisional = || StoredVersion { version: fresh_version(), provisional: true };
        Ok(tags.iter().map(|tag| self.versions.get_with_by_ref(tag, provisional).version).collect())
    }

    async fn keep_tag_versions(&self, tags: &[String]) -> Result<(), StoreError> {
        for tag in tags {
            // Whatever version the tag has now is kept: an eviction's, if one came meanwhile.
            self.versions.entry_by_ref(tag).and_compute_with(|current| match current {
                Some(current) if current.value().provisional => {
                    Op::Put(StoredVersion { provisional: false, ..*current.value() })
                }
                _ => Op::Nop,
            });
        }
        Ok(())
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.entries.insert(key.to_owned(), StoredValue { bytes: value, ttl });
        Ok(())
    }

    async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError> {
        for tag in tags {
            let version = StoredVersion { version: fresh_version(), provisional: false };
            self.versions.insert(tag.clone(), version);
        }
        Ok(())
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self.leases.entry_by_ref(key).or_insert_with(|| Lease { holder, ttl }).is_fresh())
    }

    async fn release_lease(&self, key: &str, holder: u64) -> Result<(), StoreError> {
        self.leases.entry_by_ref(key).and_compute_with(|lease| match lease {
            Some(lease) if lease.value().holder == holder => Op::Remove,
            _ => Op::Nop,
        });
        Ok(())
    }

    async fn add_to_index(&self, index: &str, key: &str, _: Duration) -> Result<(), StoreError> {
        let members = self.indexes.get_with_by_ref(index, Default::default);
        let mut members = members.lock().unwrap_or_else(PoisonError::into_inner);
        members.shift_remove(key);
        if members.len() == MAX_INDEX_MEMBERS {
            members.shift_remove_index(0);
        }
        members.insert(key.to_owned());
        Ok(())
    }

    async fn index_members(&self, index: &str) -> Result<Vec<String>, StoreError> {
        let Some(members) = self.indexes.get(index) else { return Ok(Vec::new()) };
        let members = members.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(members.iter().cloned().collect())
    }
}
